"""Specification of features.py: the pooled-feature store (dense rows, sparse matrix, file, the probes'
columns) and the bounded tokenizing of huge texts. Expected values are written out by hand."""
import torch

import features as F


def test_pooled_features_dense_sparse_and_file(tmp_path):
    values = torch.tensor([[3.0, 1.0, 0.0], [2.0, 0.5, 0.25]])
    indices = torch.tensor([[4, 0, 1], [2, 4, 5]])
    f = F.PooledFeatures(values, indices, d_sae=6)
    want = torch.tensor([[1.0, 0, 0, 0, 3.0, 0], [0, 0, 2.0, 0, 0.5, 0.25]])
    torch.testing.assert_close(f.dense(), want)
    torch.testing.assert_close(f.dense([1]), want[1:])
    sp = f.sparse()
    assert sp.layout == torch.sparse_csr and sp._nnz() == 5
    torch.testing.assert_close(sp.to_dense(), want)
    f.save(tmp_path / "f.safetensors")
    g = F.PooledFeatures.load(tmp_path / "f.safetensors")
    assert len(g) == 2 and g.d_sae == 6 and torch.equal(g.dense(), want)


def test_probe_columns_by_hand():
    # rows: problem 0 has features 5 (1.0) and 2 (0.5); problem 1 has 2 (3.0) and 7 (2.0); problem 2
    # has 2 (1.0) and a padded slot (value 0, index 0, which is not an active feature)
    feats = F.PooledFeatures(torch.tensor([[1.0, 0.5], [3.0, 2.0], [1.0, 0.0]]),
                             torch.tensor([[5, 2], [2, 7], [2, 0]]), d_sae=9)
    # activity counts: feature 2 in 3 rows, 5 and 7 in one each (tie broken by the smaller id)
    assert feats.most_active([0, 1, 2], 2).tolist() == [2, 5]
    assert feats.most_active([1], 5).tolist() == [2, 7]  # only active features, sorted by id
    block = feats.columns([0, 1, 2], [2, 7])  # feature 5 is not a column: dropped
    assert block.tolist() == [[0.5, 0.0], [3.0, 2.0], [1.0, 0.0]]
    assert feats.predict(lambda X: X.sum(1), [2, 7], chunk=2).tolist() == [0.5, 5.0, 1.0]


def test_a_head_grows_until_it_holds_max_length_tokens():
    """Tokens longer than CHARS_PER_TOKEN characters (a word-level vocabulary here): the head doubles
    until it holds more than max_length tokens, so truncation still sees max_length of them."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    word = "w" * 100  # one token of 100 characters
    inner = Tokenizer(models.WordLevel({"<unk>": 0, word: 1}, unk_token="<unk>"))
    inner.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=inner, unk_token="<unk>")
    text = " ".join([word] * 1_000)  # 1,000 tokens in 100,999 characters
    [head] = F.text_heads(tok, [text], max_length=64)
    assert len(tok(head)["input_ids"]) > 64 and len(head) < len(text)
    assert F.text_heads(tok, ["short"], max_length=64) == ["short"]
