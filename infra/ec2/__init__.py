"""rlm-ec2: a boto3 CLI for one rlm-py dev instance on EC2.

Modules, one job each:
    cli          argument parsing, ec2-setup, and the one mapping of errors to exit codes
    commands     aws-setup, create, conn, list, start, stop, reboot, delete
    aws          every boto3 call; botocore exceptions translated in `aws_errors`
    ami          baked-or-stock AMI choice from SSM parameters
    remote       rsync/ssh command lines, the caller's public IP
    host         ec2-setup's ansible-playbook command line (stdlib only)
    credentials  ~/.aws files, written as `aws configure` does
    retry        backoff for EC2's eventual consistency
    deps         the outside world, swappable in tests
    settings     names, defaults, timing
    errors       the exception tree and exit codes
"""
