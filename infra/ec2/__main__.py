"""`python -m infra.ec2`: the rlm-ec2 CLI."""

from infra.ec2.cli import main

raise SystemExit(main())
