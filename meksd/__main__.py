from meksd.cli import main

raise SystemExit(main())
