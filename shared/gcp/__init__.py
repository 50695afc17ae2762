"""What the Google client adapters share."""
