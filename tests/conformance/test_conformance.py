# Copied from the harness of the vgi-rpc 0.52.2 HTTP wire specification: the whole shared
# conformance suite of vgi-rpc, collected under this directory's conftest.py.
from vgi_rpc.conformance._pytest_suite import *  # noqa: F401,F403
