# Sourced by scripts/test.sh: the Python reference implementation (vgi-rpc 0.52.2) for the
# interoperability tests (tests/python_interop.rs, tests/python_auth.rs, tests/client_reference.rs, in the `servers`
# test binary; conformance/tests/fake_storage.rs).
SPILLWAY_VGI_PYTHON="$(scripts/vgi-reference.sh python)"
SPILLWAY_REQUIRE_PYTHON=1
export SPILLWAY_VGI_PYTHON SPILLWAY_REQUIRE_PYTHON
echo "SPILLWAY_VGI_PYTHON=$SPILLWAY_VGI_PYTHON"
