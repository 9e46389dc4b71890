"""The dashboard's ScoreCAM against full ScoreCAM on real BTXRD cases,
with the bundled demo zoo's trained members. Needs ../shared/data/btxrd and the bundled zoo.
"""

from __future__ import annotations

import pytest

from model_zoo import imaging, preprocess
from model_zoo.zoo import BUNDLED_ZOO_PARENT, list_releases

pytestmark = pytest.mark.btxrd
N_CASES = 1


@pytest.fixture(scope="module")
def bundled_zoo():
    if not list_releases(BUNDLED_ZOO_PARENT):
        reason = f"no bundled zoo under {BUNDLED_ZOO_PARENT}"
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    from model_zoo.ensemble import load_zoo

    return load_zoo()


def test_topk_scorecam_agrees_with_full_scorecam(bundled_zoo, btxrd_dir):
    from model_zoo.cases import read_case_table
    from model_zoo.explain import DEFAULT_TOP_K, scorecam_topk_agreement

    table = read_case_table(btxrd_dir / "metadata.csv")
    rows = table.frame[table.ok].sample(n=N_CASES, random_state=0)
    cases = [
        (imaging.load_image(r["image_path"]).pixels, (r["roi_x0"], r["roi_y0"], r["roi_x1"], r["roi_y1"]))
        for _, r in rows.iterrows()
    ]
    for member in bundled_zoo.members:
        inputs = [preprocess.member_input(member.spec, pixels, box)[0] for pixels, box in cases]
        result = scorecam_topk_agreement(member.spec, member.model, inputs, top_ks=(96,))
        (top96,) = result["results"]
        # The measurement behind DEFAULT_TOP_K (quoted in the issue note): top-96 channels by
        # mean activation is NOT faithful for the CNNs, so the live path scores every channel.
        print(
            f"{member.spec.member_id}: {result['channels']} channels, top-96: pearson median "
            f"{top96['pearson_median']:.3f} (min {top96['pearson_min']:.3f}), top-20% IoU median "
            f"{top96['top_iou_median']:.3f}"
        )
        # The dashboard's ScoreCAM (DEFAULT_TOP_K) scores every channel of every bundled
        # member, i.e. it is exact ScoreCAM (scorecam(top_k >= channels) == full, test_explain).
        assert result["channels"] <= DEFAULT_TOP_K
