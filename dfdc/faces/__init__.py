"""Stage extract: decoding, detection, tracks, the crop policy, the runner and the crop store."""
