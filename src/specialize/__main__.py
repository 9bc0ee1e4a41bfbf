from specialize.cli.main import main

# Guarded: `specialize tune --workers K` starts its workers with multiprocessing's spawn, which imports the parent's
# main module again in each child.
if __name__ == "__main__":
    raise SystemExit(main())
