"""Configuration: the settings object and the locations of files shipped with the service."""
