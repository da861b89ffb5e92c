"""Everything on the laptop side that talks to AWS or to an instance, in three parts:

    cloud/     AWS calls: identity, AMI, key pair, security group, capacity plan, prices, launch
    remote/    a machine once it is up: SSH, rsync, tmux runs, and the notice watcher on the instance
    journey/   the managed run (`fab run`): attempts across instances, its history and summary

and what all three share: ``config`` (configs/aws.yaml), ``errors``, ``paths`` (local files),
``registry`` (name → how to reach a machine) and ``status`` (the `fab status` table).
"""
