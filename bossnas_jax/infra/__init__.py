"""Infrastructure every stage uses: error types and the launch scripts' error handling."""
