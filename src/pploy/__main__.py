from pploy.cli import main

raise SystemExit(main())
