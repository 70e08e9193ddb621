"""Run the keeper: ``python -I -S <pkgdir>/_keeper/__main__.py <config>``.

Run by path, without ``site`` (``-S``): the package's parent directory goes on
``sys.path`` here, so nothing but the standard library and this package is reachable,
and start-up skips the site-packages scan (``.pth`` files of every installed package).
"""

import os
import sys

if not __package__:  # run by path, not with -m
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from ipyproctrack._keeper.main import main

if __name__ == "__main__":
    if sys.argv[1:2] == ["--zygote"]:  # zygote.py: <socket fd> <lifeline fd>
        from ipyproctrack._keeper.zygote import serve

        sys.exit(serve(int(sys.argv[2]), int(sys.argv[3])))
    sys.exit(main())
