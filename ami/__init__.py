"""Host provisioning (ami/playbook.yml) and AMI baking (ami/bake.py)."""
