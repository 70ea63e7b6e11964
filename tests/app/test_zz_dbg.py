from conftest import *  # noqa
from lab_testing import texts
def test_dbg(app):
    app.run()
    app.radio(key="gallery_kind").set_value("Dataset").run()
    app.selectbox(key="gallery_dataset").set_value("fashion-mnist")
    app.number_input(key="gallery_limit").set_value(12).run()
    print("EXC", [e.message for e in app.exception])
    print("SIDE", texts(app.sidebar.caption), texts(app.sidebar.error))
    print("ERR", texts(app.error), texts(app.warning), texts(app.info))
    print("NUM", [n.key for n in app.number_input], [r.key for r in app.radio], [(r.key, r.value) for r in app.radio])
