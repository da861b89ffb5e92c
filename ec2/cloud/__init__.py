"""The AWS half of the launcher: identity, the AMI, key pairs, security groups, the capacity plan,
prices, launching and finding instances by tag. Every client comes from ``common.aws``."""
