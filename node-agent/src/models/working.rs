//! How much working memory a request may take: the activations of the largest input a model
//! accepts, estimated from its shapes (reported as `working_estimate_mb`). What a worker grows
//! by is this rounded up to the allocator's pages; it gives that back once idle.

/// Bytes of the activations live at once in one block of a transformer that runs `sequences`
/// sequences of `len` positions: the residual stream, its normalised copy, the queries, keys,
/// values and attended values (six rows of `width`), the MLP's hidden layer before and after
/// its activation (two rows of `ffn`), and the attention scores with their softmax (two
/// `len × len` matrices per head). Allocator rounding is not counted.
pub(crate) fn transformer_block(
    sequences: usize,
    len: usize,
    width: usize,
    ffn: usize,
    heads: usize,
    elem: usize,
) -> u64 {
    let tokens = (sequences * len) as u64;
    let rows = tokens * (6 * width + 2 * ffn) as u64;
    let scores = 2 * (sequences * heads) as u64 * (len * len) as u64;
    (rows + scores) * elem as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_with_the_batch_and_the_square_of_the_length() {
        let one = transformer_block(1, 128, 384, 1536, 12, 4);
        assert_eq!(transformer_block(32, 128, 384, 1536, 12, 4), 32 * one);
        let long = transformer_block(1, 256, 384, 1536, 12, 4);
        assert!(long > 2 * one, "scores grow with the square of the length");
        // all-MiniLM-L6-v2 at 32 sentences of 256 tokens, f32: 168 MiB of rows, 192 MiB of
        // attention scores.
        assert_eq!(transformer_block(32, 256, 384, 1536, 12, 4), 360 << 20);
    }
}
