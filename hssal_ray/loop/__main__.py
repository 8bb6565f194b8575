"""``python -m hssal_ray.loop``: run, resume or hand off the closed loop."""

from hssal_ray.cli import loop_main

if __name__ == "__main__":
    raise SystemExit(loop_main())
