"""``python -m hssal_ray`` = ``python -m hssal_ray.loop``."""

from hssal_ray.cli import loop_main

if __name__ == "__main__":
    raise SystemExit(loop_main())
