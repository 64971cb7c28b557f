from evaluation.synthetic.benchmark import main

raise SystemExit(main())
