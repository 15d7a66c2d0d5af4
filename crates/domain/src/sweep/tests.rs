//! The sweep's pure rules: validation, the trials a seed gives, and the pruners.
