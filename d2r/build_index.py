"""``python -m d2r.build_index``: the documented entry point of ``d2r build-index``
(:mod:`d2r.cli.build_index`)."""

if __name__ == "__main__":
    from d2r.cli.build_index import main

    raise SystemExit(main())
