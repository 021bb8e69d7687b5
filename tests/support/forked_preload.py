"""What the supervisor tests' fork server imports before it forks tests.support.forked_child."""
