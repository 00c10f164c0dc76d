"""Dataset preparation: attacked copies of photos (queries), synthetic memes, the Kaggle memes splitter.

Modules
-------
attacks
    The seed's 58 attacks and the extra copy-detection edits, addressed by attack ID
    (:func:`~data_retrieval.attacks.apply_attack`, :func:`~data_retrieval.attacks.retrieve_ids`), and
    :func:`~data_retrieval.attacks.random_edit`, a random copy-detection edit used as a training augmentation.
edits
    The image edits behind the extra families (overlays, paste, padding, perspective, meme bars...).
generate_attacks
    Writes ``<stem>_<attack_id>.<fmt>`` for every image of a folder (parallel, resumable).
memes, build_memes
    Builds a stand-in for the Kaggle memes dataset from a folder of template images (``build_memes.py`` is its
    command line).
kaggle_splitter
    Prepares the real Kaggle memes dataset as the seed did.
text, runner
    Fonts and text drawing; worker processes, atomic writes, the fast PNG writer, skip lists.
"""
