from digit_utils.cli import main

raise SystemExit(main())
