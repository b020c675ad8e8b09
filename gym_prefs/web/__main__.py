"""``python -m gym_prefs.web STORE``: serve the labelling page of a preference store."""

from gym_prefs.web.serving import main

if __name__ == "__main__":
    raise SystemExit(main())
