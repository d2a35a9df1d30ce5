import os

from hypothesis import HealthCheck, settings

# Example counts are set per test (a few hundred for the agreement tests); the profiles only
# change what differs between runs.  `asan`: the sanitizer build is ~5x slower, so fewer.
settings.register_profile("default", deadline=None, suppress_health_check=[HealthCheck.too_slow],
                          print_blob=True)
settings.register_profile("asan", parent=settings.get_profile("default"), max_examples=60)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
