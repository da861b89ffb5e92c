"""Fabric tasks, grouped by stage; fabfile.py gathers them into one flat `fab --list`."""
