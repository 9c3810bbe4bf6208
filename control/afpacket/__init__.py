"""The user-space AF_PACKET forwarder, for hosts where XDP cannot run."""
