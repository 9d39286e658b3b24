"""The outside world: reading studies, writing results, devices and stores."""
