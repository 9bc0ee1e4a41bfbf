from specialize.cli.main import main

raise SystemExit(main())
