"""``python -m d2r.query``: the documented entry point of ``d2r query``
(:mod:`d2r.cli.query`)."""

if __name__ == "__main__":
    from d2r.cli.query import main

    raise SystemExit(main())
