"""Runs the plugin's unit tests and prints a cargo-style result line for xtask's tally."""
import os
import sys
import unittest

here = os.path.dirname(os.path.abspath(__file__))
suite = unittest.defaultTestLoader.discover(here, top_level_dir=os.path.dirname(here))
result = unittest.TextTestRunner(verbosity=2).run(suite)
failed = len(result.failures) + len(result.errors)
passed = result.testsRun - failed - len(result.skipped)
if result.skipped:
    failed += len(result.skipped)  # a skip is not a pass here
status = "ok" if failed == 0 else "FAILED"
print(f"test result: {status}. {passed} passed; {failed} failed (neutron-plugin)")
sys.exit(0 if failed == 0 else 1)
