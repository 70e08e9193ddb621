"""The engine: launch, drain, discovery and teardown of tracked process trees. No IPython.

Importing it registers psutil as the process scanner where there is no /proc.
"""

from .psutil_scan import install as _install_psutil_scan

_install_psutil_scan()
