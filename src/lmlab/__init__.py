"""lmlab: a JAX/Flax research codebase for pretraining, fine-tuning and evaluating language models.

Tensor names carry their shapes as suffixes (x_BLD, logits_BLV, mask_B1LS; digits are literal sizes, a
lowercase d or k is half of D or K), with one meaning per letter across the code; each module's docstring
lists the letters it uses:
  A  an NSP half row (sentence A or B)          M  documents
  B  batch rows                                 N  a flattened axis (a split's concatenated token stream;
  C  classes                                       scored positions; batch x beams)
  D  d_model                                    O  an n-gram context (order - 1 tokens)
  E  beams (beam search hypotheses)             P  the learned position table (max_len)
  F  MLP hidden width                           Q  segments (document pieces) of a row
  G  gaps between a row's tokens                R  rows of a split
  H  attention heads                            S  key length (self-attention keys / KV cache, encoder states)
  I  span corruption's encoder input length     T  decoder target length (encoder-decoder targets and their
  K  head dimension                                decoding)
  L  sequence length (a row, the queries,       V  vocabulary
     a sampling buffer)                         W  a row's scratch width
                                                Z  noise spans of a row
"""
