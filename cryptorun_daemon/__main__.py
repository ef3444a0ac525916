"""``python -m cryptorun_daemon`` is the ``cryptorun`` command line."""

from cryptorun_daemon.cli.main import main

raise SystemExit(main())
