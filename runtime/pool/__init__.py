"""The warm pool: stem cells, specialised containers, keep-alive."""
