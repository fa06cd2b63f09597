//! Sinks for voxsig-bridge: where records go.
