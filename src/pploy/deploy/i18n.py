"""English and Japanese, chosen from Accept-Language (the original pploy shipped both).

A plain dictionary: the UI has few strings, and gettext catalogues would need a compile step.
English strings are the keys; a missing translation falls back to English.
"""

# ruff: noqa: E501
from __future__ import annotations

from pploy.languages import LANGUAGES, negotiate

__all__ = ["CATALOGUES", "JA", "LANGUAGES", "negotiate", "translator"]


JA: dict[str, str] = {
    "Projects": "プロジェクト",
    "Project": "プロジェクト",
    "Add project": "プロジェクトを追加",
    "Git URL": "Git URL",
    "Add": "追加",
    "Remove project": "プロジェクトを削除",
    "Remove": "削除",
    "Really remove this project and its clone? Its history and logs are kept.": "このプロジェクトとクローンを本当に削除しますか？履歴とログは残ります。",
    "earlier repository": "以前のリポジトリ",
    "Ran before this project was last added": "このプロジェクトが最後に追加される前の実行",
    "unknown": "不明",
    "Repository": "リポジトリ",
    "removed by": "削除",
    "Lock": "ロック",
    "Locked by": "ロック中",
    "Not locked": "ロックされていません",
    "left": "残り",
    "expired": "期限切れ",
    "Gain lock": "ロックを取得",
    "Extend": "延長",
    "Release": "解放",
    "Checkout": "チェックアウト",
    "Deploy": "デプロイ",
    "Deploy to %s": "%s にデプロイ",
    "deploy": "デプロイ",
    "checkout": "チェックアウト",
    "file": "ファイル",
    "Ref (branch, tag or commit)": "ref（ブランチ・タグ・コミット）",
    "Recent jobs": "最近のジョブ",
    "History": "履歴",
    "Commits": "コミット",
    "Readme": "Readme",
    "Status": "状態",
    "User": "ユーザー",
    "Started": "開始",
    "Duration": "所要時間",
    "Kind": "種類",
    "Environment": "環境",
    "Job": "ジョブ",
    "Cancel": "キャンセル",
    "Cancel this job?": "このジョブをキャンセルしますか？",
    "Raw log": "生ログ",
    "Follow": "追従",
    "… %s more characters": "… あと %s 文字",
    "show %s more": "さらに %s 文字を表示",
    "copy line": "行をコピー",
    "running": "実行中",
    "succeeded": "成功",
    "failed": "失敗",
    "cancelled": "キャンセル",
    "interrupted": "中断",
    "timed_out": "タイムアウト",
    "awaiting_approval": "承認待ち",
    "rejected": "却下",
    "cancelled by": "キャンセルした人",
    "exit code": "終了コード",
    "Who are you?": "あなたは誰ですか？",
    "Choose": "選択",
    "Signed in as": "ログイン中",
    "Change user": "ユーザー変更",
    "No projects yet.": "プロジェクトはまだありません。",
    "No jobs yet.": "ジョブはまだありません。",
    "Last deployed": "最終デプロイ",
    "never": "なし",
    "Pending commits": "未デプロイのコミット",
    "up to date": "最新",
    "Checked out": "チェックアウト中",
    "Only the lock holder can check out or deploy.": "チェックアウトとデプロイはロック保持者のみ可能です。",
    "The log of this job was removed (only the newest are kept).": "このジョブのログは削除されました（新しいもののみ保持）。",
    "Error": "エラー",
    "Back": "戻る",
    "files": "ファイル",
    "Running job": "実行中のジョブ",
    "Transport": "転送方式",
    # API tokens (pploy.deploy.tokenroutes)
    "API tokens": "APIトークン",
    "API token": "APIトークン",
    "API tokens are made with a signed-in session, not with another API token.": (
        "APIトークンはサインインしたセッションで作成します(別のAPIトークンでは作成できません)。"
    ),
    "Copy it now: it is shown only this once (pploy keeps only its hash).": (
        "今すぐコピーしてください。表示はこの一度だけです(pploy はハッシュのみを保存します)。"
    ),
    "Create": "作成",
    "Create a token": "トークンを作成",
    "Created": "作成日時",
    "Expires": "有効期限",
    "Expires in days": "有効日数",
    "Expires in days (empty: never)": "有効日数(空欄: 無期限)",
    "Last used": "最終使用",
    "Name": "名前",
    "Name (e.g. ci)": "名前(例: ci)",
    "New token": "新しいトークン",
    "No tokens yet.": "トークンはまだありません。",
    "Revoke": "失効",
    "Your tokens": "あなたのトークン",
    "or": "または",
    "revoked": "失効済み",
    "rollback": "巻き戻し",
    "deploying now undoes %s commit(s)": "今デプロイすると %s 件のコミットを取り消します",
    "Search the log": "ログを検索",
    "Previous match (Shift+Enter)": "前の一致（Shift+Enter）",
    "Next match (Enter)": "次の一致（Enter）",
    "%s matches": "%s 件一致",
    "no matches": "一致なし",
    "Jump to first error": "最初のエラーへ",
    "Copy all": "すべてコピー",
    "no errors": "エラーなし",
    "Timestamps": "時刻",
    "All environments": "すべての環境",
    "All kinds": "すべての種類",
    "All statuses": "すべての状態",
    "Search ref, commit, message": "ref・コミット・メッセージを検索",
    "Filter": "絞り込み",
    "Clear": "解除",
    "Newer": "新しい",
    "Older": "古い",
    "Page %s of %s": "%s / %s ページ",
    "%s jobs": "%s 件",
    "then": "その後",
    "%s min left": "残り %s 分",
    "%s s left": "残り %s 秒",
    "Deploy to %s?": "%s にデプロイしますか？",
    "This ROLLS BACK %s commit(s):": "%s 件のコミットを巻き戻します:",
    "This ships %s commit(s):": "%s 件のコミットを反映します:",
    "Commit: %s": "コミット: %s",
    "Nothing new since the last deploy (%s).": "前回のデプロイから変更はありません（%s）。",
    "Sign out": "ログアウト",
    "commit": "コミット",
    "Wrap lines": "折り返し",
}

CATALOGUES = {"ja": JA}


def translator(language: str):  # noqa: ANN201 - returns a plain callable for Jinja
    catalogue = CATALOGUES.get(language, {})

    def translate(text: str) -> str:
        return catalogue.get(text, text)

    return translate
