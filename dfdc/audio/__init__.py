"""The voice branch: audio decoding, silence trimming and log-mel windows, the voice model."""
