"""The node's services and their set-up: init, logging, the escmanager service."""
