"""The pgolf application: the `pgolf` command line above core, validator, submissions and dataprep."""
