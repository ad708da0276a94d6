//! Model loading.
