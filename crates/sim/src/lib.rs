//! voxsig-sim: a Voxsig-compatible ActionCable server.
