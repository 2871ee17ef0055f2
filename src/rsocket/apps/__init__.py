"""The ``rsocket`` command line and its apps (demo, cluster demo, worker, serve, bench).

Library modules expose classes and coroutines only; everything that parses
arguments, configures logging or installs signal handlers lives here.
"""
