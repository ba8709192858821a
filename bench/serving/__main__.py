from bench.serving.harness import main

raise SystemExit(main())
