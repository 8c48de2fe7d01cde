from kept.cli import main

raise SystemExit(main())
