import os

from hypothesis import HealthCheck, settings

# Example counts are set per test (tests/strategies.py: examples); the profile sets what all
# share.  No deadline: the shared 2-core machines and the sanitizer build vary too much.
settings.register_profile("poolserve", deadline=None, suppress_health_check=[HealthCheck.too_slow],
                          print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "poolserve"))
