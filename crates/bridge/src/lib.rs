//! voxsig-bridge: the runtime between the Voxsig feed and the sinks.
