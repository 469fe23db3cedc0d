//! Abuse-resistance rules (being written).
