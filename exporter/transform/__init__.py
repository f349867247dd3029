"""Transform: a Duvo run record becomes a RunEvent."""
