"""What wicked-dr knows of the running portal, beyond its data.

* ``quiesce``: wicked's own lock protocol (``global.lock`` makes every writer back off,
  ``<file>.lock`` marks a write in flight), held around a volume scan;
* ``containers``: finding and restarting wicked's and Kong's containers through Docker.
"""
